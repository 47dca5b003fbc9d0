"""The pure core: form parsing, assertion verification, key sets, credentials, the authenticator,
the ledger port and memory ledger, and the failure brakes. No I/O library is imported here."""
