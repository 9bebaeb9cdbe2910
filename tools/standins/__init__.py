"""Stand-ins for what cannot run here: the OpenAI-compatible upstream, Kibana."""
