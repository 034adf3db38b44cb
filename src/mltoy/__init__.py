"""mltoy: a toy iris pipeline (prepare → train → evaluate) that knows nothing of its orchestrator."""
