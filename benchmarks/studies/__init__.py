"""One-off studies: each answered one question, and its figures are in docs/performance.md with the
command that produced them. They run as their docs say; ``bash run.sh bench`` does not run them."""
