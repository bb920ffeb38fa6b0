import BlockIO
import Foundation

/// A progress line on a terminal: bytes done, rate and ETA, redrawn a few
/// times a second from a background thread while the copy runs.
final class ProgressBar: @unchecked Sendable {
    private let control: CopyControl
    private let label: String
    private let enabled: Bool
    private var thread: Thread?
    private let stopped = NSCondition()
    private var done = false

    init(control: CopyControl, label: String, enabled: Bool = isatty(2) != 0) {
        self.control = control
        self.label = label
        self.enabled = enabled
    }

    func start() {
        guard enabled else { return }
        let started = Date()
        let t = Thread { [self] in
            stopped.lock()
            while !done {
                draw(elapsed: Date().timeIntervalSince(started))
                _ = stopped.wait(until: Date().addingTimeInterval(0.25))
            }
            stopped.unlock()
            draw(elapsed: Date().timeIntervalSince(started))
            FileHandle.standardError.write(Data("\n".utf8))
        }
        thread = t
        t.start()
    }

    func stop() {
        guard enabled, thread != nil else { return }
        stopped.lock(); done = true; stopped.signal(); stopped.unlock()
        while thread?.isFinished == false { usleep(10_000) }
    }

    private func draw(elapsed: Double) {
        let total = max(control.bytesTotal, 1)
        let doneBytes = control.bytesDone
        let fraction = min(1, Double(doneBytes) / Double(total))
        let width = 30
        let filled = Int(fraction * Double(width))
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        let rate = elapsed > 0 ? Double(doneBytes) / elapsed : 0
        let eta = rate > 0 ? Double(total - min(doneBytes, total)) / rate : 0
        let line = String(format: "\r%@ [%@] %3.0f%% %@ / %@  %@/s  ETA %d:%02d ",
                          label, bar, fraction * 100, formatBytes(doneBytes), formatBytes(total),
                          formatBytes(UInt64(rate)), Int(eta) / 60, Int(eta) % 60)
        FileHandle.standardError.write(Data(line.utf8))
    }
}
