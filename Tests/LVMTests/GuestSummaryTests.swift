import Testing

/// How the host suite reads the guest's run: the verdict comes from Swift
/// Testing's last line, and a skip inside the guest counts against it.
@Suite struct GuestSummaryTests {
    @Test func aPassingRunWithItsTestCount() {
        let s = GuestSummary(parsing: [
            "[  13.84] ◇ Test fullBackupOfALinearLV() started.",
            "[  45.22] ✔ Test fullBackupOfALinearLV() passed after 31.350 seconds.",
            "[  80.63] ✔ Test run with 2 tests in 2 suites passed after 66.817 seconds.",
        ])
        #expect(s == GuestSummary(tests: 2, passed: true, skipped: []))
    }

    @Test func aFailingRun() {
        let s = GuestSummary(parsing: [
            "[  80.63] ✘ Test run with 3 tests in 1 suite failed after 12.000 seconds with 1 issue.",
        ])
        #expect(s == GuestSummary(tests: 3, passed: false, skipped: []))
    }

    @Test func aRunThatMatchedNothing() {
        let s = GuestSummary(parsing: ["[  20.00] ✔ Test run with 0 tests passed after 0.001 seconds."])
        #expect(s?.tests == 0)
    }

    @Test func skippedTestsAndSuitesAreNamed() {
        let s = GuestSummary(parsing: [
            "[  13.82] ➜ Suite Smoke skipped: \"no tracefs\"",
            "[  13.83] ➜ Test fullBackupOfALinearLV() skipped: \"runs inside the LVM VM only (LVMVirtualMachineTests boots it)\"",
            "[  13.84] ◇ Test other() started: a Test x skipped in prose is no skip",
            "[  13.90] ✔ Test run with 2 tests in 2 suites passed after 0.1 seconds.",
        ])
        #expect(s?.skipped.count == 2)
        #expect(s?.skipped.first?.hasPrefix("Suite Smoke skipped") == true)
    }

    @Test func colourEscapesAreIgnored() {
        let s = GuestSummary(parsing: ["\u{1B}[92m✔\u{1B}[0m Test run with 1 test passed after 0.5 seconds."])
        #expect(s == GuestSummary(tests: 1, passed: true, skipped: []))
    }

    @Test func aVMThatDiedPrintsNoSummary() {
        #expect(GuestSummary(parsing: ["[   6.06] LVMVM: init at 4.25s", "[ 600.00] lvm-vm: FAIL after 600.00 s"]) == nil)
    }
}
