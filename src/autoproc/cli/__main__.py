from autoproc.cli import main

main()
