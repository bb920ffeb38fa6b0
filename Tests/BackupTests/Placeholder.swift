import Testing
@testable import Backup
