import ArgumentParser
import ControlProtocol

/// The ringback command line: backups of Linux block devices.
struct Ringback: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ringback",
        abstract: "Back up Linux block devices at device speed into qcow2 or raw images.",
        discussion: "Full backups through io_uring with O_DIRECT, per-cluster digests, restore and verification.",
        version: RingbackVersion.string,
        subcommands: [BackupCommand.self, RestoreCommand.self, VerifyCommand.self, Devices.self, BenchCommand.self,
                      TrackCommand.self, UntrackCommand.self, BitmapCommand.self, QMPCommand.self,
                      JobsCommand.self, JobCommand.self, TransactionCommand.self, ListCommand.self, ShowCommand.self,
                      PlanCommand.self, MergeCommand.self, RetainCommand.self]
    )
}

Ringback.main()
