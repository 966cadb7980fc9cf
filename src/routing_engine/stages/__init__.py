"""Pipeline stages, one module each. A stage turns a batch of entries into outcomes (what to commit); the
runtime in infra/ reads, commits and acknowledges."""
