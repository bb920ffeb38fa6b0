import Jobs
import PropertyBased
import Testing

/// The job tables checked against QEMU's, written out here a second time in
/// QEMU's own layout (rows: from-status or verb; columns U C R P Y S W D X E N),
/// so that a changed entry in either place fails.
@Suite struct JobTableTests {
    static let columns: [JobStatus] = [.undefined, .created, .running, .paused, .ready, .standby,
                                       .waiting, .pending, .aborting, .concluded, .null]

    static let transitions: [JobStatus: String] = [
        .undefined: "01000000000",
        .created:   "00100000101",
        .running:   "00011010100",
        .paused:    "00100000000",
        .ready:     "00000110100",
        .standby:   "00001000000",
        .waiting:   "00000001100",
        .pending:   "00000000110",
        .aborting:  "00000000110",
        .concluded: "00000000001",
        .null:      "00000000000",
    ]

    static let verbs: [JobVerb: String] = [
        .cancel:   "01111111000",
        .pause:    "01111100000",
        .resume:   "01111100000",
        .setSpeed: "01111100000",
        .complete: "00001000000",
        .finalize: "00000001000",
        .dismiss:  "00000000010",
        .change:   "00111000000",
    ]

    @Test("every transition, from every status to every status", arguments: JobStatus.allCases)
    func transitions(from: JobStatus) {
        let row = Array(Self.transitions[from]!)
        for (i, to) in Self.columns.enumerated() {
            #expect(JobTable.canTransition(from: from, to: to) == (row[i] == "1"), "\(from.rawValue) → \(to.rawValue)")
        }
    }

    @Test("every verb in every status: allowed, or refused with QEMU's words", arguments: JobVerb.allCases)
    func verbs(verb: JobVerb) {
        let row = Array(Self.verbs[verb]!)
        for (i, status) in Self.columns.enumerated() {
            let allowed = row[i] == "1"
            #expect(JobTable.allows(verb, in: status) == allowed, "\(verb.rawValue) in \(status.rawValue)")
            do {
                try JobTable.check(verb, job: "job0", status: status)
                #expect(allowed, "\(verb.rawValue) in \(status.rawValue) should be refused")
            } catch {
                #expect(!allowed)
                #expect(error.message == "Job 'job0' in state '\(status.rawValue)' cannot accept command verb '\(verb.rawValue)'")
            }
        }
    }

    @Test func columnsCoverEveryStatus() {
        #expect(Set(Self.columns) == Set(JobStatus.allCases))
        #expect(Set(Self.verbs.keys) == Set(JobVerb.allCases))
    }

    /// A random walk through the table: a job that reaches null never moves
    /// again, every concluded job got there through pending or aborting, and
    /// once aborting a job can never be pending again.
    @Test func randomWalksKeepTheLifeCycle() async {
        await propertyCheck(input: Gen.int(in: 0...Int(Int32.max)).array(of: 1...40)) { choices in
            var status = JobStatus.undefined
            var seen: [JobStatus] = [status]
            for c in choices {
                let next = JobStatus.allCases.filter { JobTable.canTransition(from: status, to: $0) }
                if next.isEmpty { break }
                status = next[c % next.count]
                seen.append(status)
            }
            if let i = seen.firstIndex(of: .concluded) {
                #expect(i > 0 && [.pending, .aborting].contains(seen[i - 1]))
            }
            if let a = seen.firstIndex(of: .aborting) {
                #expect(!seen[a...].contains(.pending))
                #expect(!seen[a...].contains(.running))
            }
            if seen.contains(.null) { #expect(seen.last == .null) }
        }
    }

    @Test func errorPolicies() {
        #expect(ErrorPolicy.enospc.action(errno: 28, enospc: 28) == .stop)
        #expect(ErrorPolicy.enospc.action(errno: 5, enospc: 28) == .report)
        #expect(ErrorPolicy.stop.action(errno: 5, enospc: 28) == .stop)
        #expect(ErrorPolicy.ignore.action(errno: 5, enospc: 28) == .ignore)
        #expect(ErrorPolicy.report.action(errno: 28, enospc: 28) == .report)
    }
}
