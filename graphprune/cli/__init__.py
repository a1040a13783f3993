"""The `graphprune` command line: verbs that parse options, call the workflow and print."""
