// swift-tools-version: 6.1
import PackageDescription

/// ringback: full and incremental backups of Linux block devices.
/// Layers (DESIGN.md §3): C shims at the bottom, then BlockIO (io_uring copy
/// engine), BlockDevices (probing), Images (qcow2/raw, digests), Backup
/// (the operations the CLI and daemon run), Catalog (SQLite record of devices,
/// chains and backups), executables on top.
let package = Package(
    name: "ringback",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "ringback", targets: ["ringback"]),
        .executable(name: "ringbackd", targets: ["ringbackd"]),
        .library(name: "Backup", targets: ["Backup"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.0"),
        // Structured logs (stderr, read by journald) and Prometheus metrics.
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.0"),
    ],
    targets: [
        // Header-only shim: ioctl numbers, O_DIRECT and IOSQE_* flags that Swift
        // cannot import as macros.
        .systemLibrary(name: "CShim", path: "Sources/CShim"),
        .systemLibrary(name: "CLiburing", path: "Sources/CLiburing", pkgConfig: "liburing",
                       providers: [.apt(["liburing-dev"])]),
        .systemLibrary(name: "CBlkid", path: "Sources/CBlkid", pkgConfig: "blkid",
                       providers: [.apt(["libblkid-dev"])]),
        .systemLibrary(name: "CXXHash", path: "Sources/CXXHash", pkgConfig: "libxxhash",
                       providers: [.apt(["libxxhash-dev"])]),
        .systemLibrary(name: "CZstd", path: "Sources/CZstd", pkgConfig: "libzstd",
                       providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", pkgConfig: "zlib",
                       providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CSQLite", path: "Sources/CSQLite", pkgConfig: "sqlite3",
                       providers: [.apt(["libsqlite3-dev"])]),

        .target(name: "BlockIO", dependencies: ["CLiburing", "CShim"]),
        .target(name: "BlockDevices", dependencies: ["CBlkid", "CShim", "BlockIO"]),
        .target(name: "Images", dependencies: ["CXXHash", "CZstd", "CZlib", "CShim", "BlockIO"]),
        .target(name: "DirtyBitmaps", dependencies: ["BlockIO"]),
        // Quiesce (DESIGN §11): which filesystems to freeze, the watchdog that
        // holds the freeze, and the hooks around it.
        .target(name: "Quiesce", dependencies: ["BlockDevices", "BlockIO", "CShim"]),
        // The job model's tables (DESIGN §9): statuses, verbs, error policies.
        .target(name: "Jobs"),
        // QMP messages, client and server, shared by the CLI and ringbackd.
        .target(name: "ControlProtocol"),
        .target(name: "WriteTracking", dependencies: ["BlockIO", "BlockDevices"]),
        .target(name: "Backup", dependencies: ["BlockIO", "BlockDevices", "Images", "CShim"]),
        // The backup catalog (devices, bitmaps, chains, backups) in one SQLite
        // file, and the table and detail text the CLI prints from its records.
        .target(name: "Catalog", dependencies: ["CSQLite"]),
        // The configuration file (/etc/ringback/ringback.toml): our own parser
        // for a TOML subset, the typed [daemon], [metrics] and [plan.NAME]
        // settings, and the plans' schedules.
        .target(name: "Config"),
        .executableTarget(name: "ringback", dependencies: [
            "Backup", "BlockDevices", "BlockIO", "Images", "ControlProtocol", "Catalog",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "ringbackd", dependencies: [
            "Backup", "BlockDevices", "BlockIO", "Images", "ControlProtocol", "DirtyBitmaps", "WriteTracking", "Jobs", "Catalog", "Quiesce", "Config",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
        ]),

        // Loop devices, processes and the qemu-img oracles, for tests only.
        .target(name: "TestSupport", dependencies: ["ControlProtocol"]),

        .testTarget(name: "BlockIOTests", dependencies: [
            "BlockIO", "TestSupport", .product(name: "PropertyBased", package: "swift-property-based"),
        ]),
        .testTarget(name: "BlockDevicesTests", dependencies: [
            "BlockDevices", "BlockIO", "TestSupport", .product(name: "PropertyBased", package: "swift-property-based"),
        ]),
        .testTarget(name: "ImagesTests", dependencies: [
            "Images", "BlockIO", "TestSupport", .product(name: "PropertyBased", package: "swift-property-based"),
        ]),
        .testTarget(name: "ControlProtocolTests", dependencies: ["ControlProtocol", "TestSupport"]),
        .testTarget(name: "DirtyBitmapsTests", dependencies: [
            "DirtyBitmaps", "BlockIO", "TestSupport", .product(name: "PropertyBased", package: "swift-property-based"),
        ]),
        .testTarget(name: "WriteTrackingTests", dependencies: ["WriteTracking", "BlockIO", "BlockDevices", "TestSupport"]),
        .testTarget(name: "QuiesceTests", dependencies: ["Quiesce"]),
        .testTarget(name: "JobsTests", dependencies: [
            "Jobs", .product(name: "PropertyBased", package: "swift-property-based"),
        ]),
        .testTarget(name: "DaemonTests", dependencies: ["ControlProtocol", "TestSupport"]),
        .testTarget(name: "CatalogTests", dependencies: [
            "Catalog", "CSQLite", "TestSupport", .product(name: "PropertyBased", package: "swift-property-based"),
        ]),
        .testTarget(name: "ConfigTests", dependencies: [
            "Config", .product(name: "PropertyBased", package: "swift-property-based"),
        ]),
        .testTarget(name: "BackupTests", dependencies: ["Backup", "BlockDevices", "BlockIO", "Images", "TestSupport"]),
        // LVM tests: the host part boots a small VM (scripts/lvm-vm.sh) that runs
        // the guest part of this same test bundle against real device-mapper.
        .testTarget(name: "LVMTests", dependencies: ["BlockDevices", "ControlProtocol", "TestSupport"]),
        // The Debian package installed, run, removed and purged on this machine
        // (packaging/install-test.sh; root and dpkg).
        .testTarget(name: "PackagingTests", dependencies: ["TestSupport"]),
    ]
)
