"""Serving a trained router: an OpenAI-compatible endpoint (`router_server`) and a Hub-ready
export with its model card (`export`)."""
