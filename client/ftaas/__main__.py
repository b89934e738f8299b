from ftaas.cli import main

main()
