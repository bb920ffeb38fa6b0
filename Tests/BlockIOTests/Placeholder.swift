import Testing
@testable import BlockIO
