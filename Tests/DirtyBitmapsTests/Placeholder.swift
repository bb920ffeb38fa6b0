import Testing
@testable import DirtyBitmaps
