"""The `dvcflow` command line: parse, call one library function, render. Nothing else lives here."""
