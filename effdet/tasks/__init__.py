"""The tasks behind the command line: one module per `effdet <task>`."""
