"""Plan → C++ source → compiled, cached, loaded kernel modules."""
