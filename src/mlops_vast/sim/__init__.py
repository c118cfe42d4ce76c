"""vastsim: a local Vast.ai marketplace with the real REST API and real SSH-able instances."""
