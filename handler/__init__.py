"""What travels inside the .mar: schema, model, row decoding, responses, TorchServe entry.

Imports torch, numpy and the standard library only, and its modules import each other
relatively, so the same code runs from the installed package and unpacked from an archive.
"""
