import Testing
@testable import BlockDevices
