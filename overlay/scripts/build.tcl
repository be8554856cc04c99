# Builds the dynq overlay: packages the core, makes the block design, runs synthesis, implementation and
# write_bitstream, and writes the overlay package (package/: dynq.bit, dynq.hwh, overlay.json).
#
#   cd <this directory> && vivado -mode batch -source build.tcl
#
# The package appears only when everything succeeded: it is assembled in package.tmp/ and renamed at the
# end, so an interrupted or failed build leaves no package/. Parallel jobs: $DYNQ_VIVADO_JOBS (default 4).
source [file join [file dirname [file normalize [info script]]] common.tcl]

set version [version -short]
lassign $vivado(targets) oldest newest
if {[package vcompare $version $oldest] < 0 || [package vcompare [lindex [split $version .] 0] \
        [lindex [split $newest .] 0]] > 0} {
    puts "WARNING: dynq: Vivado $version; these scripts target $oldest to $newest (written for $vivado(reference))"
}
set jobs [expr {[info exists ::env(DYNQ_VIVADO_JOBS)] ? $::env(DYNQ_VIVADO_JOBS) : 4}]

source [file join $dynq_dir package_ip.tcl]

dynq_step create_project
create_project -force $project [file join $dynq_dir vivado] -part $part
set_property board_part [dynq_board_part $board_part] [current_project]
set_property target_language Verilog [current_project]
set_property ip_repo_paths [file join $dynq_dir ip] [current_project]
update_ip_catalog

source [file join $dynq_dir block_design.tcl]

dynq_step generate_target
set bd_file [get_files ${design}.bd]
generate_target all $bd_file
add_files -norecurse [make_wrapper -files $bd_file -top]
set_property top $top [current_fileset]
update_compile_order -fileset sources_1

dynq_step synth_design
launch_runs synth_1 -jobs $jobs
wait_on_run synth_1
dynq_require_run synth_1 synthesis

dynq_step implementation
launch_runs impl_1 -to_step write_bitstream -jobs $jobs
wait_on_run impl_1
dynq_require_run impl_1 "implementation or write_bitstream"

dynq_step package
set staging [file join $dynq_dir $pkg(dir).tmp]
file delete -force $staging
file mkdir $staging
set bit [file join [get_property DIRECTORY [get_runs impl_1]] ${top}.bit]
if {![file exists $bit]} {
    error "dynq: impl_1 completed but wrote no $bit"
}
file copy $bit [file join $staging $pkg(bitstream)]
file copy [dynq_hwh $design] [file join $staging $pkg(hwh)]
set in [open [file join $dynq_dir $pkg(template)] r]
set text [string map [list $pkg(vivado_placeholder) $version] [read $in]]
close $in
set out [open [file join $staging $pkg(manifest)] w]
puts -nonewline $out $text
close $out
file delete -force [file join $dynq_dir $pkg(dir)]
file rename $staging [file join $dynq_dir $pkg(dir)]
puts "dynq: wrote the overlay package [file join $dynq_dir $pkg(dir)]: $pkg(bitstream) $pkg(hwh) $pkg(manifest)"
