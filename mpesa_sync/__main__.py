from mpesa_sync.cli import main

main()
