from dvcflow.cli.entry import main

main()
