import Images
import PropertyBased
import Testing

/// The qcow2 table arithmetic of `Qcow2Geometry`, by example and by property.
@Suite struct Qcow2GeometryTests {
    @Test("guest offsets split into L1 and L2 indexes that rebuild the cluster number")
    func indexesRoundTrip() async {
        await propertyCheck(count: 500, input: Gen.int(in: 9...21), Gen.uint64(in: 1...(1 << 50)), Gen.uint64()) {
            bits, size, pick in
            let g = Qcow2Geometry(clusterBits: bits, virtualSize: size)
            let offset = pick % size
            let (l1, l2) = g.indexes(of: offset)
            #expect(UInt64(l1) * UInt64(g.l2Entries) + UInt64(l2) == offset >> UInt64(bits))
            #expect(l2 >= 0 && l2 < g.l2Entries)
            #expect(l1 >= 0 && l1 < g.l1Entries)
            // guestClusters is the least number of clusters covering the disk.
            #expect(g.guestClusters << UInt64(bits) >= size)
            #expect((g.guestClusters - 1) << UInt64(bits) < size)
        }
    }

    @Test("indexes by example", arguments: [(Int, UInt64, Int, Int)]([
        (16, 0, 0, 0), (16, 0xFFFF, 0, 0), (16, 0x10000, 0, 1),
        (16, 0x2000_0000 - 1, 0, 8191), (16, 0x2000_0000, 1, 0), (9, 0x8000, 1, 0), (21, 0x2000_0000_0000, 64, 0),
    ]))
    func indexesByExample(bits: Int, offset: UInt64, l1: Int, l2: Int) {
        let g = Qcow2Geometry(clusterBits: bits, virtualSize: 1 << 60)
        #expect(g.indexes(of: offset) == (l1, l2))
    }

    @Test("refcount structures cover every cluster, themselves included, and no fewer blocks would")
    func refcountStructuresCover() async {
        await propertyCheck(count: 500, input: Gen.int(in: 9...21), Gen.int(in: 0...6), Gen.uint64(in: 0...(1 << 36))) {
            bits, order, used in
            let g = Qcow2Geometry(clusterBits: bits, virtualSize: 1 << 40, refcountOrder: order)
            let (blocks, table) = g.refcountStructures(forUsedClusters: used)
            let perBlock = UInt64(g.refcountsPerBlock), perTableCluster = g.clusterSize / 8
            // Covers: every used cluster, every refcount block and every table cluster has a refcount.
            #expect(UInt64(blocks) * perBlock >= used + UInt64(blocks) + UInt64(table))
            // The refcount table has an entry for every block.
            #expect(table * perTableCluster >= blocks)
            // Minimal: one block fewer (with the smallest table for it) leaves a cluster without a refcount,
            if blocks > 0 {
                let fewer = UInt64(blocks - 1)
                let tableForFewer = UInt64((Int(fewer) + perTableCluster - 1) / perTableCluster)
                #expect(fewer * perBlock < used + fewer + tableForFewer)
            }
            // and one table cluster fewer cannot list every block.
            if table > 0 { #expect((table - 1) * perTableCluster < blocks) }
        }
    }

    @Test("refcount structures by example (64 KiB clusters, 16-bit refcounts: 32768 per block)",
          arguments: [(UInt64, Int, Int)]([(0, 0, 0), (1, 1, 1), (100, 1, 1), (32766, 1, 1), (32767, 2, 1), (65533, 2, 1), (65534, 3, 1)]))
    func refcountStructuresByExample(used: UInt64, blocks: Int, table: Int) {
        let g = Qcow2Geometry(clusterBits: 16, virtualSize: 1 << 30)
        #expect(g.refcountsPerBlock == 32768)
        #expect(g.refcountStructures(forUsedClusters: used) == (blocks, table))
    }
}
