"""One sub-package per data domain. Domains never import each other."""
