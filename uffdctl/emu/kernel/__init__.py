"""The process side of the model (kernel/): fork() as kernel/fork.c and mm/mmap.c's dup_mmap() do it."""
