"""Files cloud-init installs on the node; they run there with the OS's python3 and sh: stdlib only."""
