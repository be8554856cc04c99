# A recording stand-in for the Vivado Tcl commands the dynq overlay scripts use, for plain tclsh.
#
#   cd BUILD_DIR && tclsh vivado_stub.tcl build.tcl RECORD.json
#
# Defines each Vivado command the scripts call as a proc that records the call and returns a handle naming
# the kind of object (`bd:cell:axi_dma`, `bd:intf:axi_dma/S_AXI_LITE`, `ipx:busif:s_axil`, ...), then sources
# the script and writes the record as JSON: a list of calls, each a list of strings. It is strict where Vivado
# would fail: a command it does not define is Tcl's "invalid command name"; a cell, pin, address space or
# segment of a cell never created, a pin of the dynq core that its packaging did not declare, a property set
# on a non-object, a duplicate cell or bus interface, all raise. Xilinx's own IPs are opaque to it (their pin
# names are checked by the Python test).
#
# What a real Vivado writes is imitated far enough for build.tcl to run to its end: launch_runs writes a
# placeholder bitstream where impl_1 puts it and prints the step lines Vivado's log has; generate_target writes
# the record so far as HWH.json beside the block design's .hwh, and the .hwh as a copy of it or, when
# $DYNQ_STUB_HWH names a command, by running `$DYNQ_STUB_HWH HWH.json HWH` (tests/vivado_record.py writes a
# pynq-parseable .hwh from the record).
# $DYNQ_STUB_VERSION sets `version -short` (default 2022.1); $DYNQ_STUB_FAIL_RUN makes that run stop short.

set ::calls {}
set ::cells [dict create]
set ::busifs [dict create]
set ::files [dict create]
set ::props [dict create]
set ::project_dir ""
set ::project_name ""

proc record {args} {
    lappend ::calls $args
}

proc json_string {s} {
    set map [list "\\" "\\\\" "\"" "\\\"" "\n" "\\n" "\r" "\\r" "\t" "\\t"]
    return "\"[string map $map $s]\""
}

proc dump {path} {
    set out {}
    foreach call $::calls {
        set words {}
        foreach w $call {
            lappend words [json_string $w]
        }
        lappend out "\[[join $words ,]\]"
    }
    set f [open $path w]
    puts $f "\[\n[join $out ",\n"]\n\]"
    close $f
}

# -- options: `opts args {-flag ...} {-key ...}` splits args into a dict of options and the rest
proc opts {arguments flags keys} {
    set o [dict create]
    set rest {}
    for {set i 0} {$i < [llength $arguments]} {incr i} {
        set a [lindex $arguments $i]
        if {$a in $flags} {
            dict set o $a 1
        } elseif {$a in $keys} {
            incr i
            dict set o $a [lindex $arguments $i]
        } elseif {[string index $a 0] eq "-" && ![string is double $a]} {
            error "stub: unexpected option $a (flags: $flags, options: $keys)"
        } else {
            lappend rest $a
        }
    }
    return [list $o $rest]
}

proc kind {handle expected} {
    if {![string match "${expected}:*" $handle]} {
        error "stub: expected a $expected object, got '$handle'"
    }
    return [string range $handle [string length $expected]+1 end]
}

proc set_prop {handle key value} {
    if {![regexp {^(project|fileset|run|ipx|bd):} $handle]} {
        error "stub: set_property on '$handle', which is no object"
    }
    dict set ::props $handle $key $value
    record set_property $handle $key $value
}

# -- generic --------------------------------------------------------------------------------------------
proc version {args} {
    if {$args ne "-short"} { error "stub: version $args" }
    if {[info exists ::env(DYNQ_STUB_VERSION)]} { return $::env(DYNQ_STUB_VERSION) }
    return 2022.1
}

proc set_property {args} {
    lassign [opts $args {-quiet} {-dict -name -value -objects}] o rest
    if {[dict exists $o -dict]} {
        set values [dict get $o -dict]
        set objects $rest
    } elseif {[dict exists $o -name]} {
        set values [list [dict get $o -name] [dict get $o -value]]
        set objects [dict get $o -objects]
    } else {
        lassign $rest key value
        set values [list $key $value]
        set objects [lrange $rest 2 end]
    }
    if {[llength $objects] == 0} { error "stub: set_property without an object" }
    foreach object [concat {*}$objects] {
        dict for {key value} $values {
            set_prop $object $key $value
        }
    }
}

proc get_property {name object} {
    if {[string match run:* $object]} {
        set run [kind $object run]
        set failed [expr {[info exists ::env(DYNQ_STUB_FAIL_RUN)] && $::env(DYNQ_STUB_FAIL_RUN) eq $run}]
        switch -- $name {
            PROGRESS { return [expr {$failed ? "30%" : "100%"}] }
            STATUS { return [expr {$failed ? "stub: $run failed" : "stub: $run complete"}] }
            DIRECTORY { return [file join $::project_dir $::project_name.runs $run] }
        }
    }
    if {[string match ipx:* $object] && $name eq "name"} {
        return [lindex [split $object :] end]
    }
    if {[dict exists $::props $object $name]} {
        return [dict get $::props $object $name]
    }
    error "stub: get_property $name of $object: not recorded"
}

# -- project ---------------------------------------------------------------------------------------------
proc create_project {args} {
    lassign [opts $args {-force -in_memory} {-part}] o rest
    lassign $rest name dir
    if {![dict exists $o -part]} { error "stub: create_project without -part" }
    set ::project_name $name
    set ::project_dir [file normalize $dir]
    set ::files [dict create]
    file mkdir $::project_dir
    record create_project $name $::project_dir [dict get $o -part]
    return project:$name
}
proc current_project {args} {
    if {$::project_name eq ""} { error "stub: no project open" }
    return project:$::project_name
}
proc close_project {args} {
    record close_project $::project_name
    set ::project_name ""
}
proc current_fileset {args} { return fileset:sources_1 }
proc add_files {args} {
    lassign [opts $args {-norecurse} {-fileset}] o rest
    foreach path [concat {*}$rest] {
        if {![file exists $path] && ![string match *_wrapper.v $path]} { error "stub: add_files: no file $path" }
        dict set ::files [file tail $path] $path
        record add_files $path
    }
}
proc update_compile_order {args} { record update_compile_order {*}$args }
proc update_ip_catalog {args} { record update_ip_catalog }
proc get_board_parts {args} {
    lassign [opts $args {-quiet -latest_file_version} {}] o rest
    record get_board_parts {*}$rest
    return [string map {* 9.9} [lindex $rest 0]]
}
proc get_ipdefs {args} {
    lassign [opts $args {-quiet -all} {-filter}] o rest
    return [string map {* 99.9} [lindex $rest 0]]
}
proc get_files {args} {
    lassign [opts $args {-quiet -all} {-of_objects}] o rest
    set found {}
    foreach pattern $rest {
        dict for {name path} $::files {
            if {[string match $pattern $name]} { lappend found file:$path }
        }
    }
    if {[llength $found] == 0 && ![dict exists $o -quiet]} { error "stub: get_files $rest: none" }
    # like Vivado's file objects, the handle is the path
    return [lmap f $found {kind $f file}]
}

# -- runs ------------------------------------------------------------------------------------------------
proc get_runs {name} { return run:$name }
proc launch_runs {args} {
    lassign [opts $args {} {-jobs -to_step}] o rest
    set run [lindex $rest 0]
    record launch_runs $run [expr {[dict exists $o -to_step] ? [dict get $o -to_step] : ""}]
    set dir [file join $::project_dir $::project_name.runs $run]
    file mkdir $dir
    if {$run eq "synth_1"} {
        puts "Starting synth_design"
    } else {
        foreach step {place_design route_design write_bitstream} { puts "Command: $step" }
        set top [dict get $::props fileset:sources_1 top]
        set f [open [file join $dir $top.bit] w]
        puts $f "stub bitstream"
        close $f
    }
}
proc wait_on_run {run} { record wait_on_run $run }

# -- IP packager -----------------------------------------------------------------------------------------
namespace eval ipx {}
proc ipx::package_project {args} {
    lassign [opts $args {-import_files -force -set_current} {-root_dir -vendor -library -taxonomy}] o rest
    record ipx::package_project [dict get $o -root_dir] [dict get $o -vendor] [dict get $o -library]
    file mkdir [dict get $o -root_dir]
    # what Vivado infers from the port names, which the script must replace
    foreach name {s_axil s_axis m_axis clk aresetn} {
        dict set ::busifs $name inferred
    }
    dict set ::props ipx:memmap:s_axil name s_axil
    return ipx:core
}
proc ipx::current_core {} { return ipx:core }
proc ipx::get_bus_interfaces {args} {
    lassign [opts $args {} {-of_objects}] o rest
    kind [dict get $o -of_objects] ipx
    if {[llength $rest]} {
        set name [lindex $rest 0]
        if {![dict exists $::busifs $name]} { return {} }
        return ipx:busif:$name
    }
    return [lmap name [dict keys $::busifs] {string cat ipx:busif: $name}]
}
proc ipx::remove_bus_interface {name core} {
    if {![dict exists $::busifs $name]} { error "stub: no bus interface $name" }
    dict unset ::busifs $name
    record ipx::remove_bus_interface $name
}
proc ipx::get_memory_maps {args} {
    lassign [opts $args {} {-of_objects}] o rest
    return [lmap h [dict keys $::props ipx:memmap:*] {set h}]
}
proc ipx::remove_memory_map {name core} {
    dict unset ::props ipx:memmap:$name
    record ipx::remove_memory_map $name
}
proc ipx::add_bus_interface {name core} {
    kind $core ipx
    if {[dict exists $::busifs $name]} { error "stub: bus interface $name exists" }
    dict set ::busifs $name declared
    record ipx::add_bus_interface $name
    return ipx:busif:$name
}
proc ipx::add_port_map {logical busif} {
    set name [kind $busif ipx:busif]
    record ipx::add_port_map $name $logical
    return ipx:portmap:$name:$logical
}
proc ipx::add_bus_parameter {parameter busif} {
    set name [kind $busif ipx:busif]
    record ipx::add_bus_parameter $name $parameter
    return ipx:busparam:$name:$parameter
}
proc ipx::add_memory_map {name core} {
    record ipx::add_memory_map $name
    dict set ::props ipx:memmap:$name name $name
    return ipx:memmap:$name
}
proc ipx::add_address_block {name map} {
    set m [kind $map ipx:memmap]
    record ipx::add_address_block $m $name
    return ipx:block:$m:$name
}
proc ipx::add_user_parameter {name core} {
    record ipx::add_user_parameter $name
    return ipx:userparam:$name
}
foreach command {create_xgui_files update_checksums check_integrity save_core} {
    proc ipx::$command {core} "kind \$core ipx; record ipx::$command"
}

# -- block design ----------------------------------------------------------------------------------------
proc create_bd_design {name} {
    set bd [file join $::project_dir $::project_name.srcs sources_1 bd $name $name.bd]
    file mkdir [file dirname $bd]
    close [open $bd w]
    dict set ::files $name.bd $bd
    record create_bd_design $name
}
proc create_bd_cell {args} {
    lassign [opts $args {} {-type -vlnv}] o rest
    set name [lindex $rest 0]
    if {[dict exists $::cells $name]} { error "stub: cell $name exists" }
    dict set ::cells $name [dict get $o -vlnv]
    record create_bd_cell $name [dict get $o -vlnv]
    return bd:cell:$name
}
proc cell_of {path} {
    set cell [lindex [split [string trimleft $path /] /] 0]
    if {![dict exists $::cells $cell]} { error "stub: no cell $cell (in $path)" }
    return $cell
}
# the dynq core's pins are what its packaging declared: interfaces, and the ports of clock, reset, interrupt
proc core_pin {cell pin intf} {
    if {[dict get $::cells $cell] ne [dict get $::props project:core vlnv]} { return }
    if {$intf} {
        if {![dict exists $::busifs $pin] || [dict get $::busifs $pin] ne "declared"} {
            error "stub: the core declares no interface $pin"
        }
    } elseif {![dict exists $::props ipx:portmap:$pin:CLK] && ![dict exists $::props ipx:portmap:$pin:RST]
              && ![dict exists $::props ipx:portmap:$pin:INTERRUPT]} {
        error "stub: the core has no clock, reset or interrupt port $pin"
    }
}
proc get_bd_cells {name} { cell_of $name; return bd:cell:[string trimleft $name /] }
proc get_bd_pins {args} {
    return [lmap p $args {
        set cell [cell_of $p]
        core_pin $cell [lindex [split $p /] end] 0
        string cat bd:pin: [string trimleft $p /]
    }]
}
proc get_bd_intf_pins {path} {
    set cell [cell_of $path]
    core_pin $cell [lindex [split $path /] end] 1
    return bd:intf:[string trimleft $path /]
}
proc get_bd_addr_spaces {path} { cell_of $path; return bd:space:[string trimleft $path /] }
proc get_bd_addr_segs {args} {
    lassign [opts $args {-quiet -addressables} {-of_objects}] o rest
    if {[dict exists $o -of_objects]} { return {} }
    set path [lindex $rest 0]
    cell_of $path
    return bd:seg:[string trimleft $path /]
}
proc apply_bd_automation {args} {
    lassign [opts $args {} {-rule -config}] o rest
    record apply_bd_automation [dict get $o -rule] [kind [lindex $rest 0] bd:cell] {*}[dict get $o -config]
}
proc connect_bd_intf_net {a b} {
    record connect_bd_intf_net [kind $a bd:intf] [kind $b bd:intf]
}
proc connect_bd_net {args} {
    set pins [lmap p [concat {*}$args] {kind $p bd:pin}]
    if {[llength $pins] < 2} { error "stub: connect_bd_net needs two pins or more: $args" }
    record connect_bd_net {*}$pins
}
proc assign_bd_address {args} {
    lassign [opts $args {-force} {-offset -range -target_address_space}] o rest
    foreach key {-offset -range -target_address_space} {
        if {![dict exists $o $key]} { error "stub: assign_bd_address without $key" }
    }
    record assign_bd_address [kind [dict get $o -target_address_space] bd:space] [kind [lindex $rest 0] bd:seg] \
        [dict get $o -offset] [dict get $o -range]
}
proc exclude_bd_addr_seg {args} {
    lassign [opts $args {} {-target_address_space}] o rest
    record exclude_bd_addr_seg [kind [dict get $o -target_address_space] bd:space] [kind [lindex $rest 0] bd:seg]
}
proc validate_bd_design {args} { record validate_bd_design }
proc save_bd_design {args} { record save_bd_design }
proc make_wrapper {args} {
    lassign [opts $args {-top} {-files}] o rest
    set bd [dict get $o -files]
    set design [file rootname [file tail $bd]]
    record make_wrapper $design
    return [file join $::project_dir $::project_name.gen sources_1 bd $design hdl ${design}_wrapper.v]
}
proc generate_target {what bd} {
    set design [file rootname [file tail $bd]]
    record generate_target $what $design
    set hwh [file join $::project_dir $::project_name.gen sources_1 bd $design hw_handoff $design.hwh]
    file mkdir [file dirname $hwh]
    dump $hwh.json
    if {[info exists ::env(DYNQ_STUB_HWH)]} {
        exec {*}$::env(DYNQ_STUB_HWH) $hwh.json $hwh
    } else {
        file copy -force $hwh.json $hwh
    }
    dict set ::files $design.hwh $hwh
}

# -- run the script --------------------------------------------------------------------------------------
lassign $argv script record_path
# the core's VLNV, for core_pin: what package_ip.tcl packages under
dict set ::props project:core vlnv ""
trace add execution ipx::package_project leave {apply {{cmd code result op} {
    lassign [opts [lrange $cmd 1 end] {-import_files -force -set_current} {-root_dir -vendor -library -taxonomy}] o
    dict set ::props project:core vendor [dict get $o -vendor]
    dict set ::props project:core library [dict get $o -library]
}}}
trace add execution ipx::save_core enter {apply {{cmd op} {
    dict set ::props project:core vlnv [join [list [dict get $::props project:core vendor] \
        [dict get $::props project:core library] [dict get $::props ipx:core name] \
        [dict get $::props ipx:core version]] :]
}}}
if {[catch {source $script} message options]} {
    dump $record_path
    puts stderr "stub: $script failed: $message"
    puts stderr [dict get $options -errorinfo]
    exit 1
}
dump $record_path
