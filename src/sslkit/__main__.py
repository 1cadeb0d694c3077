from sslkit.cli import main

main()
