# The overlay's block design: the PS (from the board preset), the AXI DMA in simple mode, the dynq core,
# two SmartConnects (registers: PS master -> core and DMA; memory: DMA -> PS high-performance port), one PL
# clock with its reset, the core's interrupt, and the address map of dynq.contract.address_map.
#
# Instance names, ports, addresses, ranges and the DMA's configuration come from params.tcl; the pin and
# interface names of Xilinx's own IPs (axi_dma, smartconnect, proc_sys_reset) are written here.
source [file join [file dirname [file normalize [info script]]] common.tcl]

dynq_step block_design
create_bd_design $design

# processing system: the board preset, then the ports, clock and interrupt the overlay uses
set ps_cell [create_bd_cell -type ip -vlnv [dynq_ipdef $ps(ip)] $ps(instance)]
apply_bd_automation -rule $ps(rule) -config $ps(rule_config) $ps_cell
set_property -dict $ps(config) $ps_cell

set dma_cell [create_bd_cell -type ip -vlnv [dynq_ipdef $dma(ip)] $dma(instance)]
set_property -dict $dma(config) $dma_cell

create_bd_cell -type ip -vlnv $core(vlnv) $core(instance)

set ctrl [create_bd_cell -type ip -vlnv [dynq_ipdef xilinx.com:ip:smartconnect] axi_ctrl]
set_property -dict [list CONFIG.NUM_SI 1 CONFIG.NUM_MI 2] $ctrl
set mem [create_bd_cell -type ip -vlnv [dynq_ipdef xilinx.com:ip:smartconnect] axi_mem]
set_property -dict [list CONFIG.NUM_SI 2 CONFIG.NUM_MI 1] $mem
create_bd_cell -type ip -vlnv [dynq_ipdef xilinx.com:ip:proc_sys_reset] rst_pl

# registers: PS master -> core and DMA
connect_bd_intf_net [get_bd_intf_pins $ps(instance)/$ps(master)] [get_bd_intf_pins axi_ctrl/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins axi_ctrl/M00_AXI] [get_bd_intf_pins $core(instance)/$core(reg_interface)]
connect_bd_intf_net [get_bd_intf_pins axi_ctrl/M01_AXI] [get_bd_intf_pins $dma(instance)/S_AXI_LITE]
# feature maps, program and weights: DMA -> core -> DMA
connect_bd_intf_net [get_bd_intf_pins $dma(instance)/M_AXIS_MM2S] [get_bd_intf_pins $core(instance)/$core(stream_in)]
connect_bd_intf_net [get_bd_intf_pins $core(instance)/$core(stream_out)] [get_bd_intf_pins $dma(instance)/S_AXIS_S2MM]
# memory: DMA -> PS DDR
connect_bd_intf_net [get_bd_intf_pins $dma(instance)/M_AXI_MM2S] [get_bd_intf_pins axi_mem/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins $dma(instance)/M_AXI_S2MM] [get_bd_intf_pins axi_mem/S01_AXI]
connect_bd_intf_net [get_bd_intf_pins axi_mem/M00_AXI] [get_bd_intf_pins $ps(instance)/$ps(slave)]

# one clock domain: the PS's PL clock
connect_bd_net [get_bd_pins $ps(instance)/$ps(clock_pin)] \
    [get_bd_pins $ps(instance)/$ps(master_clock)] [get_bd_pins $ps(instance)/$ps(slave_clock)] \
    [get_bd_pins $core(instance)/$core(clock)] \
    [get_bd_pins $dma(instance)/s_axi_lite_aclk] [get_bd_pins $dma(instance)/m_axi_mm2s_aclk] \
    [get_bd_pins $dma(instance)/m_axi_s2mm_aclk] \
    [get_bd_pins axi_ctrl/aclk] [get_bd_pins axi_mem/aclk] [get_bd_pins rst_pl/slowest_sync_clk]
connect_bd_net [get_bd_pins $ps(instance)/$ps(reset_pin)] [get_bd_pins rst_pl/ext_reset_in]
connect_bd_net [get_bd_pins rst_pl/peripheral_aresetn] \
    [get_bd_pins $core(instance)/$core(reset)] [get_bd_pins $dma(instance)/axi_resetn]
connect_bd_net [get_bd_pins rst_pl/interconnect_aresetn] [get_bd_pins axi_ctrl/aresetn] [get_bd_pins axi_mem/aresetn]
connect_bd_net [get_bd_pins $core(instance)/$core(irq)] [get_bd_pins $ps(instance)/$ps(irq_pin)]

# the address map
set ps_space [get_bd_addr_spaces $ps(instance)/$ps(data_space)]
assign_bd_address -offset $addr(core_base) -range $addr(core_range) -target_address_space $ps_space \
    [get_bd_addr_segs $core(instance)/$core(reg_interface)/$core(reg_block)] -force
assign_bd_address -offset $addr(dma_base) -range $addr(dma_range) -target_address_space $ps_space \
    [get_bd_addr_segs $dma(instance)/S_AXI_LITE/Reg] -force
set ddr [get_bd_addr_segs $ps(instance)/$ps(ddr_segment)]
foreach name {Data_MM2S Data_S2MM} {
    set space [get_bd_addr_spaces $dma(instance)/$name]
    assign_bd_address -offset $addr(ddr_base) -range $addr(ddr_range) -target_address_space $space $ddr -force
    # the DMA reaches DDR and nothing else (QSPI, OCM ...); cosmetic, so a release without -addressables
    # only leaves Vivado's "unassigned segment" warnings
    if {[catch {
        foreach seg [get_bd_addr_segs -quiet -addressables -of_objects $space] {
            if {$seg ne $ddr} {
                exclude_bd_addr_seg -target_address_space $space $seg
            }
        }
    } message]} {
        puts "WARNING: dynq: left other segments of $name unassigned: $message"
    }
}

validate_bd_design
save_bd_design
