# dynq overlay build: the setup every script here shares. Generated builds copy this file unchanged; every
# name, number and option comes from params.tcl beside it, which dynq writes from its contract and the board
# file (dynq overlay build --board NAME). Targets Vivado 2020.2 to 2024.2 (see params.tcl: vivado).

set dynq_dir [file dirname [file normalize [info script]]]
source [file join $dynq_dir params.tcl]

# Marks a build step in the log; `dynq overlay build` shows them as progress.
proc dynq_step {name} {
    puts "dynq: step $name"
}

# The newest version of an IP in the catalog: the scripts name IPs without a version, so one script serves
# every Vivado release (the PS and DMA IP versions change between releases).
proc dynq_ipdef {vlnv} {
    set defs [lsort -dictionary [get_ipdefs -quiet -all "${vlnv}:*"]]
    if {[llength $defs] == 0} {
        error "dynq: the Vivado IP catalog has no $vlnv; use a full Vivado installation with the Zynq devices"
    }
    return [lindex $defs end]
}

# The board part to use: the board file's preset, or the newest installed version of the same board.
proc dynq_board_part {preset} {
    if {[llength [get_board_parts -quiet $preset]] > 0} {
        return $preset
    }
    lassign [split $preset :] vendor name part
    set other [get_board_parts -quiet -latest_file_version "${vendor}:${name}:${part}:*"]
    if {[llength $other] > 0} {
        puts "WARNING: dynq: board files $preset are not installed; using [lindex $other 0]"
        return [lindex $other 0]
    }
    error "dynq: Vivado has no board files for $preset; install them (Tools > Vivado Store > Boards, or\
        xhub::refresh_catalog \[xhub::get_xstores xilinx_board_store\];\
        xhub::install \[xhub::get_xitems *${name}*\]) and run the build again"
}

# Stops the build unless `run` completed; names the log that says why.
proc dynq_require_run {run what} {
    set r [get_runs $run]
    if {[get_property PROGRESS $r] ne "100%"} {
        error "dynq: $what failed ([get_property STATUS $r]); see [file join [get_property DIRECTORY $r] runme.log]"
    }
}

# The block design's hardware handoff: a project file since 2020.2; found in the project tree otherwise.
proc dynq_hwh {design} {
    global dynq_dir
    set hwh [get_files -quiet -all ${design}.hwh]
    if {[llength $hwh] == 0} {
        set hwh [glob -nocomplain [file join $dynq_dir vivado * sources_1 bd $design hw_handoff ${design}.hwh]]
    }
    if {[llength $hwh] == 0} {
        error "dynq: Vivado wrote no ${design}.hwh (generate_target of the block design failed?)"
    }
    return [lindex $hwh 0]
}
