// swift-tools-version: 6.1
import PackageDescription

/// ringback-bench: `ringback backup` against fio, dd and `qemu-img convert` on
/// the same loop devices (DESIGN.md §4, issue 2 item 10).
///
/// A package of its own so that `swift test` of ringback never builds it. It
/// measures the release binary as an operator runs it, so it drives
/// `ringback` as a process and does not link the main package.
let package = Package(
    name: "RingbackBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .executableTarget(name: "ringback-bench", dependencies: [
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
    ]
)
