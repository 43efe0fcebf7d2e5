"""What can serve a job besides the simulated engine: real engines behind an OpenAI-compatible
HTTP API (`openai_compatible`)."""
