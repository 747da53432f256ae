from registrygrid.cli.main import main

main()
