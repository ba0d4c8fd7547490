"""`foresight local`: OpenBao, a CA, the service and a demo tenant on this machine, under a state directory."""
