"""What the server and its clients share, free of torch: the explain options table, the error
table, the local-server record and the generated wire format."""
