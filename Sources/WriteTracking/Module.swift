// Changed-block tracking through tracefs (DESIGN §7): see WriteTracker.swift.
import BlockIO
