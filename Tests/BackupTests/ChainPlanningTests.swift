import Backup
import Foundation
import Testing
import TestSupport

/// Which image a merge folds into which, and which chains retention keeps:
/// the decisions made from names and times alone, before any image is read.
@Suite struct ChainPlanningTests {
    /// A chain folder with empty files of these names; it goes with the returned folder.
    func folder(_ names: [String]) throws -> (TemporaryDirectory, ChainDirectory) {
        let dir = try TemporaryDirectory(prefix: "ringback-chainplan")
        for name in names { #expect(FileManager.default.createFile(atPath: dir.file(name), contents: Data())) }
        return (dir, ChainDirectory(path: dir.path))
    }

    @Test func imageNamesAreParsed() {
        let full = ChainImage(path: "/r/c/0000-full-20250601T020000Z.qcow2")
        #expect(full?.seq == 0 && full?.kind == .full && full?.time == "20250601T020000Z")
        let inc = ChainImage(path: "/r/c/0012-inc-20250602T020000Z.qcow2")
        #expect(inc?.seq == 12 && inc?.kind == .inc && inc?.asFull == "0012-full-20250602T020000Z.qcow2")
        for bad in ["0001-inc-X.qcow2.partial", "01-inc-X.qcow2", "0001-diff-X.qcow2", "abcd-inc-X.qcow2",
                    "0001-inc-X.qcow2.digests", "0001-full-.qcow"] {
            #expect(ChainImage(path: "/r/c/" + bad) == nil, "\(bad)")
        }
    }

    @Test func theOldestIncrementalIsMergedIntoItsFull() throws {
        let (dir, chain) = try folder(["0000-full-T0.qcow2", "0001-inc-T1.qcow2", "0002-inc-T2.qcow2", "0003-inc-T3.qcow2",
                                     "0001-inc-T1.qcow2.digests", "0004-inc-T4.qcow2.partial", "notes.txt"])
        let step = try #require(ChainMerge.plan(chain))
        #expect(step.full == "0000-full-T0.qcow2" && step.incremental == "0001-inc-T1.qcow2")
        #expect(step.merged == "0001-full-T1.qcow2")
        #expect(step.mergedPath == chain.path + "/0001-full-T1.qcow2")
        #expect(ChainMerge.incrementals(chain) == 3)
        #expect(ChainMerge.plan(chain, keep: 2)?.incremental == "0001-inc-T1.qcow2")
        #expect(ChainMerge.plan(chain, keep: 3) == nil, "three incrementals, three kept")
        #expect(chain.partials() == ["0004-inc-T4.qcow2.partial"])
        // After the merge the numbering goes on from the newest image.
        #expect((chain.next(.inc) as NSString).lastPathComponent.hasPrefix("0004-inc-"))
        withExtendedLifetime(dir) {}
    }

    /// A full taken into a folder that already holds a chain restarts it:
    /// each segment is merged on its own, the oldest segment first.
    @Test func segmentsAreMergedOldestFirst() throws {
        let (dir, chain) = try folder(["0000-full-A.qcow2", "0001-inc-B.qcow2", "0002-full-C.qcow2", "0003-inc-D.qcow2",
                                     "0004-inc-E.qcow2"])
        #expect(chain.segments().map { $0.map(\.seq) } == [[0, 1], [2, 3, 4]])
        #expect(ChainMerge.plan(chain)?.incremental == "0001-inc-B.qcow2")
        #expect(ChainMerge.plan(chain, keep: 1)?.full == "0002-full-C.qcow2")
        #expect(ChainMerge.plan(chain, keep: 1)?.incremental == "0003-inc-D.qcow2")
        #expect(ChainMerge.plan(chain, keep: 2) == nil)
        let (orphanDir, orphans) = try folder(["0001-inc-B.qcow2", "0002-inc-C.qcow2"])
        #expect(ChainMerge.plan(orphans) == nil, "incrementals without a full cannot be merged")
        withExtendedLifetime((dir, orphanDir)) {}
    }

    @Test func aMergeJournalIsReadBackAndAForeignOneRefused() throws {
        let (dir, chain) = try folder(["0000-full-A.qcow2"])
        #expect(try ChainMerge.pending(chain) == nil)
        let step = ChainMergeStep(chain: "/elsewhere", full: "0000-full-A.qcow2", incremental: "0001-inc-B.qcow2",
                                  merged: "0001-full-B.qcow2")
        try JSONEncoder().encode(step).write(to: URL(fileURLWithPath: ChainMerge.journalPath(chain)))
        let read = try #require(try ChainMerge.pending(chain))
        #expect(read.chain == dir.path && read.incremental == step.incremental)
        var evil = step
        evil.incremental = "../../etc/passwd"
        try JSONEncoder().encode(evil).write(to: URL(fileURLWithPath: ChainMerge.journalPath(chain)))
        #expect(throws: BackupError.self) { try ChainMerge.pending(chain) }
        try Data("{".utf8).write(to: URL(fileURLWithPath: ChainMerge.journalPath(chain)))
        let error = #expect(throws: BackupError.self) { try ChainMerge.pending(chain) }
        #expect(error?.description.contains("cannot be read") == true)
    }

    @Test func retentionKeepsTheNewestChainsAndNeverABusyOne() {
        let chains = [
            RetentionCandidate(path: "/r/c", newestPoint: "20250103T000000Z"),
            RetentionCandidate(path: "/r/a", newestPoint: "20250101T000000Z"),
            RetentionCandidate(path: "/r/b", newestPoint: "20250102T000000Z", busy: "job 'x' writes into it"),
            RetentionCandidate(path: "/r/new", newestPoint: nil),
        ]
        let plan = RetentionPlan.make(chains, keepChains: 1)
        #expect(plan.keep == ["/r/b", "/r/new"])
        #expect(plan.remove == ["/r/a", "/r/c"])
        #expect(plan.skipped == [.init(chain: "/r/b", reason: "not removed: job 'x' writes into it")])
        #expect(RetentionPlan.make(chains, keepChains: 0).keep.contains("/r/new"), "the newest is always kept")
        #expect(RetentionPlan.make(chains, keepChains: 9).remove.isEmpty)
        #expect(RetentionPlan.make(chains, keepChains: nil).remove.isEmpty, "without keep-chains nothing is removed")
    }

    /// Every mix of ages and busy chains: the newest `keep` are kept, a busy
    /// chain is never removed, the newest chain never, and only older chains go.
    @Test(arguments: 1...4)
    func retentionRulesHoldForEveryMix(keep: Int) {
        for mask in 0..<(1 << 10) {
            let n = mask % 6 + 1
            let chains = (0..<n).map { i in
                RetentionCandidate(path: "/r/\(i)", newestPoint: String(format: "2025%04dT000000Z", (i * 7) % n),
                                   busy: (mask >> i) & 1 == 1 ? "busy" : nil)
            }
            let plan = RetentionPlan.make(chains, keepChains: keep)
            #expect(Set(plan.keep).union(plan.remove) == Set(chains.map(\.path)) && Set(plan.keep).isDisjoint(with: plan.remove))
            let ordered = chains.sorted { ($0.newestPoint!, $0.path) < ($1.newestPoint!, $1.path) }.map(\.path)
            #expect(ordered.suffix(keep).allSatisfy(plan.keep.contains))
            #expect(!plan.remove.contains(ordered.last!))
            for c in chains where c.busy != nil { #expect(!plan.remove.contains(c.path)) }
            #expect(plan.keep.count == min(n, keep) + plan.skipped.count)
            for removed in plan.remove {
                #expect(ordered.firstIndex(of: removed)! < n - keep)
            }
        }
    }
}
