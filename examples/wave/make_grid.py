"""Generate stage of the pipelines guide: print a small model grid (redirect it to a file)."""

print("nx=40")
print("ny=20")
