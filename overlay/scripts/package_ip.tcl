# Packages the generated Verilog core as a Vivado IP in ip/, for the block design to instantiate.
#
# Every bus interface is declared port by port from params.tcl (dynq derives the port lists from the MyHDL
# core's ports), not left to Vivado's name-based inference, so a renamed port fails here instead of leaving
# an unconnected pin. The AXI4-Lite slave gets the core's register window as its memory map, and the IP
# carries the architecture fingerprint and contract version as user parameters: the .hwh lists them, and
# `dynq overlay check` compares them with the board file.
source [file join [file dirname [file normalize [info script]]] common.tcl]

dynq_step package_ip
create_project -force $core(name)_ip [file join $dynq_dir ip_project] -part $part
add_files -norecurse [file join $dynq_dir $core(file)]
set_property top $core(name) [current_fileset]
update_compile_order -fileset sources_1
ipx::package_project -root_dir [file join $dynq_dir ip $core(name)] -vendor $core(vendor) \
    -library $core(library) -taxonomy /UserIP -import_files -force
set ip [ipx::current_core]
set_property name $core(name) $ip
set_property version $core(version) $ip
set_property display_name $core(display_name) $ip
set_property description $core(description) $ip

# drop what the packager inferred from the port names, then declare the interfaces
foreach bif [ipx::get_bus_interfaces -of_objects $ip] {
    ipx::remove_bus_interface [get_property name $bif] $ip
}
foreach map [ipx::get_memory_maps -of_objects $ip] {
    ipx::remove_memory_map [get_property name $map] $ip
}
dict for {name spec} $core(interfaces) {
    set bif [ipx::add_bus_interface $name $ip]
    set_property abstraction_type_vlnv [dict get $spec abstraction] $bif
    set_property bus_type_vlnv [dict get $spec bus] $bif
    set_property interface_mode [dict get $spec mode] $bif
    dict for {logical physical} [dict get $spec ports] {
        set_property physical_name $physical [ipx::add_port_map $logical $bif]
    }
    dict for {parameter value} [dict get $spec parameters] {
        set_property value $value [ipx::add_bus_parameter $parameter $bif]
    }
}

# the register window
set map [ipx::add_memory_map $core(reg_interface) $ip]
set_property slave_memory_map_ref $core(reg_interface) [ipx::get_bus_interfaces $core(reg_interface) -of_objects $ip]
set block [ipx::add_address_block $core(reg_block) $map]
set_property range $core(reg_range) $block
set_property width $core(reg_width) $block
set_property usage register $block

# what the overlay was built for
dict for {name value} $core(user_parameters) {
    set param [ipx::add_user_parameter $name $ip]
    set_property value_resolve_type user $param
    set_property value_format string $param
    set_property value $value $param
}

ipx::create_xgui_files $ip
ipx::update_checksums $ip
ipx::check_integrity $ip
ipx::save_core $ip
close_project
