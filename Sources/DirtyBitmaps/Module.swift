// The QEMU dirty-bitmap model (DESIGN §6): see DirtyBitmap.swift.
