from dvcflow.cli.app import main

main()
