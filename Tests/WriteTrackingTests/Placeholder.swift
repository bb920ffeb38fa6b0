import Testing
@testable import WriteTracking
