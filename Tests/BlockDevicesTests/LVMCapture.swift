import Foundation
import Testing
@testable import BlockDevices

/// Output of LVM 2.03.16 (Debian 12), captured in the LVM test VM
/// (scripts/lvm-vm.sh) with
/// `lvs -a --reportformat json --units b --nosuffix -o <LVSReport.fields>` after:
///
///     vgcreate vg0 /dev/vda; vgcreate my-vg /dev/vdb
///     lvcreate -L 8m -n root vg0; lvcreate -L 8m -n data-lv my-vg
///     lvcreate -s -L 4m -n root-snap vg0/root
///     lvcreate -L 32m --chunksize 64k -T vg0/pool; lvcreate -V 16m -T vg0/pool -n thin1
///     lvcreate -s -n thin1-snap vg0/thin1
///     lvcreate -L 4m -n idle vg0; lvchange -an vg0/idle
enum LVMCapture {
    static let all = #"""
  {
      "report": [
          {
              "lv": [
                  {"lv_name":"data-lv", "vg_name":"my-vg", "lv_uuid":"1kxyms-4BZ7-lXZ3-E81a-ZNOY-Hwqe-AFFEnx", "vg_uuid":"oaPdV6-VOG9-DADW-lGmh-lq0h-cRsv-oKqqx6", "lv_size":"8388608", "origin_size":"", "segtype":"linear", "pool_lv":"", "origin":"", "lv_dm_path":"/dev/mapper/my--vg-data--lv", "lv_attr":"-wi-a-----", "thin_id":"", "lv_kernel_major":"253", "lv_kernel_minor":"1", "data_percent":""},
                  {"lv_name":"idle", "vg_name":"vg0", "lv_uuid":"Kf3aDo-qw3j-XUia-g0g4-kIKv-IhpR-rpRRlQ", "vg_uuid":"dd2ucA-8Tom-o6OB-tGJh-ihGf-om3D-jVuFHf", "lv_size":"4194304", "origin_size":"", "segtype":"linear", "pool_lv":"", "origin":"", "lv_dm_path":"/dev/mapper/vg0-idle", "lv_attr":"-wi-------", "thin_id":"", "lv_kernel_major":"-1", "lv_kernel_minor":"-1", "data_percent":""},
                  {"lv_name":"[lvol0_pmspare]", "vg_name":"vg0", "lv_uuid":"tPFGdA-pDln-MUJd-dTw2-a8cA-uIwB-lZHXPF", "vg_uuid":"dd2ucA-8Tom-o6OB-tGJh-ihGf-om3D-jVuFHf", "lv_size":"4194304", "origin_size":"", "segtype":"linear", "pool_lv":"", "origin":"", "lv_dm_path":"/dev/mapper/vg0-lvol0_pmspare", "lv_attr":"ewi-------", "thin_id":"", "lv_kernel_major":"-1", "lv_kernel_minor":"-1", "data_percent":""},
                  {"lv_name":"pool", "vg_name":"vg0", "lv_uuid":"sjV1wv-KOLv-bzbd-3Hjg-qdXZ-o0Mx-dsXmye", "vg_uuid":"dd2ucA-8Tom-o6OB-tGJh-ihGf-om3D-jVuFHf", "lv_size":"33554432", "origin_size":"", "segtype":"thin-pool", "pool_lv":"", "origin":"", "lv_dm_path":"/dev/mapper/vg0-pool", "lv_attr":"twi-aotz--", "thin_id":"", "lv_kernel_major":"253", "lv_kernel_minor":"7", "data_percent":"0.00"},
                  {"lv_name":"[pool_tdata]", "vg_name":"vg0", "lv_uuid":"2lcJTG-12om-zEs4-ThRF-sUu9-WG0W-fS6FoD", "vg_uuid":"dd2ucA-8Tom-o6OB-tGJh-ihGf-om3D-jVuFHf", "lv_size":"33554432", "origin_size":"", "segtype":"linear", "pool_lv":"", "origin":"", "lv_dm_path":"/dev/mapper/vg0-pool_tdata", "lv_attr":"Twi-ao----", "thin_id":"", "lv_kernel_major":"253", "lv_kernel_minor":"6", "data_percent":""},
                  {"lv_name":"[pool_tmeta]", "vg_name":"vg0", "lv_uuid":"5aZuGd-HzOz-4rRS-KW43-YlTU-Z2SP-pozgat", "vg_uuid":"dd2ucA-8Tom-o6OB-tGJh-ihGf-om3D-jVuFHf", "lv_size":"4194304", "origin_size":"", "segtype":"linear", "pool_lv":"", "origin":"", "lv_dm_path":"/dev/mapper/vg0-pool_tmeta", "lv_attr":"ewi-ao----", "thin_id":"", "lv_kernel_major":"253", "lv_kernel_minor":"5", "data_percent":""},
                  {"lv_name":"root", "vg_name":"vg0", "lv_uuid":"09tVac-pPmx-c925-K1e5-6fg9-rzSM-mO1sbs", "vg_uuid":"dd2ucA-8Tom-o6OB-tGJh-ihGf-om3D-jVuFHf", "lv_size":"8388608", "origin_size":"8388608", "segtype":"linear", "pool_lv":"", "origin":"", "lv_dm_path":"/dev/mapper/vg0-root", "lv_attr":"owi-a-s---", "thin_id":"", "lv_kernel_major":"253", "lv_kernel_minor":"0", "data_percent":""},
                  {"lv_name":"root-snap", "vg_name":"vg0", "lv_uuid":"deWBAV-xfzQ-5UJg-zs8J-Dajv-Ojg7-4fjtj0", "vg_uuid":"dd2ucA-8Tom-o6OB-tGJh-ihGf-om3D-jVuFHf", "lv_size":"4194304", "origin_size":"8388608", "segtype":"linear", "pool_lv":"", "origin":"root", "lv_dm_path":"/dev/mapper/vg0-root--snap", "lv_attr":"swi-a-s---", "thin_id":"", "lv_kernel_major":"253", "lv_kernel_minor":"4", "data_percent":"0.00"},
                  {"lv_name":"thin1", "vg_name":"vg0", "lv_uuid":"pjbAp5-qGR6-Sbn0-h4yD-QaTW-39pb-wRBH2v", "vg_uuid":"dd2ucA-8Tom-o6OB-tGJh-ihGf-om3D-jVuFHf", "lv_size":"16777216", "origin_size":"", "segtype":"thin", "pool_lv":"pool", "origin":"", "lv_dm_path":"/dev/mapper/vg0-thin1", "lv_attr":"Vwi-a-tz--", "thin_id":"1", "lv_kernel_major":"253", "lv_kernel_minor":"9", "data_percent":"0.00"},
                  {"lv_name":"thin1-snap", "vg_name":"vg0", "lv_uuid":"wdxK5H-1owp-Krjl-gt46-bb4R-A9wC-s9VGs5", "vg_uuid":"dd2ucA-8Tom-o6OB-tGJh-ihGf-om3D-jVuFHf", "lv_size":"16777216", "origin_size":"", "segtype":"thin", "pool_lv":"pool", "origin":"thin1", "lv_dm_path":"/dev/mapper/vg0-thin1--snap", "lv_attr":"Vwi---tz-k", "thin_id":"2", "lv_kernel_major":"-1", "lv_kernel_minor":"-1", "data_percent":""}
              ]
          }
      ]
  }
"""#

    /// `lvs ... my-vg/data-lv`
    static let one = #"""
  {
      "report": [
          {
              "lv": [
                  {"lv_name":"data-lv", "vg_name":"my-vg", "lv_uuid":"1kxyms-4BZ7-lXZ3-E81a-ZNOY-Hwqe-AFFEnx", "vg_uuid":"oaPdV6-VOG9-DADW-lGmh-lq0h-cRsv-oKqqx6", "lv_size":"8388608", "origin_size":"", "segtype":"linear", "pool_lv":"", "origin":"", "lv_dm_path":"/dev/mapper/my--vg-data--lv", "lv_attr":"-wi-a-----", "thin_id":"", "lv_kernel_major":"253", "lv_kernel_minor":"1", "data_percent":""}
              ]
          }
      ]
  }
"""#

    /// `lvs ... nosuchvg/x` (exit status 5, "Volume group "nosuchvg" not found" on stderr)
    /// and `lvs ... vg0/pool_tmeta` (exit status 0: a hidden LV asked for without -a).
    static let empty = #"""
  {
      "report": [
          {
              "lv": [
              ]
          }
      ]
  }
"""#

    /// KERNEL-NAME MAJ:MIN dm/name dm/uuid of each dm device, from sysfs, at the same moment.
    static let sysfs = """
dm-0 253:0 vg0-root LVM-dd2ucA8Tomo6OBtGJhihGfom3DjVuFHf09tVacpPmxc925K1e56fg9rzSMmO1sbs
dm-1 253:1 my--vg-data--lv LVM-oaPdV6VOG9DADWlGmhlq0hcRsvoKqqx61kxyms4BZ7lXZ3E81aZNOYHwqeAFFEnx
dm-2 253:2 vg0-root-real LVM-dd2ucA8Tomo6OBtGJhihGfom3DjVuFHf09tVacpPmxc925K1e56fg9rzSMmO1sbs-real
dm-3 253:3 vg0-root--snap-cow LVM-dd2ucA8Tomo6OBtGJhihGfom3DjVuFHfdeWBAVxfzQ5UJgzs8JDajvOjg74fjtj0-cow
dm-4 253:4 vg0-root--snap LVM-dd2ucA8Tomo6OBtGJhihGfom3DjVuFHfdeWBAVxfzQ5UJgzs8JDajvOjg74fjtj0
dm-5 253:5 vg0-pool_tmeta LVM-dd2ucA8Tomo6OBtGJhihGfom3DjVuFHf5aZuGdHzOz4rRSKW43YlTUZ2SPpozgat-tmeta
dm-6 253:6 vg0-pool_tdata LVM-dd2ucA8Tomo6OBtGJhihGfom3DjVuFHf2lcJTG12omzEs4ThRFsUu9WG0WfS6FoD-tdata
dm-7 253:7 vg0-pool-tpool LVM-dd2ucA8Tomo6OBtGJhihGfom3DjVuFHfsjV1wvKOLvbzbd3HjgqdXZo0MxdsXmye-tpool
dm-8 253:8 vg0-pool LVM-dd2ucA8Tomo6OBtGJhihGfom3DjVuFHfsjV1wvKOLvbzbd3HjgqdXZo0MxdsXmye-pool
dm-9 253:9 vg0-thin1 LVM-dd2ucA8Tomo6OBtGJhihGfom3DjVuFHfpjbAp5qGR6Sbn0h4yDQaTW39pbwRBH2v
"""
}
