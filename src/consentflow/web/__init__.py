"""The web app: API, people's pages, compliance dashboard (thin over the service)."""
