from consentflow.cli import main

main()
