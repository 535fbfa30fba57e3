"""One module per review tool's export format; each turns an export into an ImportBatch."""
