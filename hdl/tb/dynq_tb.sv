// File-driven testbench of dynq_core for `verilator --binary --timing`.
//
// Plusargs:
//   +cmd=PATH       commands, one per line (default /dev/stdin)
//   +out=PATH       responses, one per line, flushed after every command (default /dev/stdout, also "-";
//                   a file is truncated, another /dev/ path appended to)
//   +timeout=N      cycles any single handshake may wait before the run fails (decimal, default 1000000)
//   +reset=N        cycles aresetn is held low at the start (default 8)
//
// Commands (every number hexadecimal, no 0x prefix needed):
//   W addr data                  AXI4-Lite write: AW and W together, then wait for B.   No response.
//   R addr                       AXI4-Lite read.                                         "R data"
//   S n                          followed by n lines of one 32-bit word each: n beats on s_axis, TLAST on the
//                                last, every handshake waited for.                      No response.
//   G n                          n beats from m_axis with TREADY high.                   n lines "G word last"
//   X n m                        followed by n lines of one word each: the n beats on s_axis (TLAST on the
//                                last) while m beats are taken from m_axis, both in the same cycles, as a
//                                DMA with both channels running does. Ends when both are through, when irq
//                                has been high for 16 cycles with no beat moving (the core stopped), or
//                                after +timeout cycles with no beat moving.
//                                                 "X sent received ok|stopped|stalled", then a line
//                                                 "G word last" per received beat
//   P addr mask value maxcycles  read addr until (data & mask) == value or maxcycles cycles have passed.
//                                                                                        "P ok cycles" / "P timeout cycles"
//   C                            clock cycles since reset was released.                 "C cycles"
//   Q                            finish.
// Empty lines and lines starting with '#' are ignored; end of the command file finishes like Q.
// Every number in a response is hexadecimal too (the G `last` flag is 0 or 1).
// A handshake that times out writes "E timeout <what>"; an unknown or malformed command writes
// "E bad command <line>"; either finishes the simulation.

`timescale 1ns / 1ps

/* verilator lint_off PROCASSINIT */

module dynq_tb;
  logic clk = 1'b0;
  logic aresetn = 1'b0;

  logic [14:0] s_axil_awaddr = '0;
  logic s_axil_awvalid = 1'b0;
  logic s_axil_awready;
  logic [31:0] s_axil_wdata = '0;
  logic [3:0] s_axil_wstrb = '0;
  logic s_axil_wvalid = 1'b0;
  logic s_axil_wready;
  logic [1:0] s_axil_bresp;
  logic s_axil_bvalid;
  logic s_axil_bready = 1'b0;
  logic [14:0] s_axil_araddr = '0;
  logic s_axil_arvalid = 1'b0;
  logic s_axil_arready;
  logic [31:0] s_axil_rdata;
  logic [1:0] s_axil_rresp;
  logic s_axil_rvalid;
  logic s_axil_rready = 1'b0;
  logic [31:0] s_axis_tdata = '0;
  logic s_axis_tvalid = 1'b0;
  logic s_axis_tready;
  logic s_axis_tlast = 1'b0;
  logic [31:0] m_axis_tdata;
  logic m_axis_tvalid;
  logic m_axis_tready = 1'b0;
  logic m_axis_tlast;
  logic irq;

  dynq_core dut (.*);

  always #5 clk = ~clk;

  // cycles since reset was released: the value at a posedge counts the edges before it
  longint unsigned cycles = 0;
  always @(posedge clk) begin
    if (!aresetn) cycles <= 0;
    else cycles <= cycles + 1;
  end

  int fin, fout;
  longint unsigned timeout_cycles = 1000000;
  int reset_cycles = 8;
  bit failed = 1'b0;

  function automatic void respond(string s);
    $fdisplay(fout, "%s", s);
  endfunction

  task automatic fail(string s);
    respond({"E ", s});
    $fflush(fout);
    failed = 1'b1;
  endtask

  // Timing discipline: every task starts and ends just after a falling edge. Inputs change there
  // (blocking assignments); `settle` lets the core's combinational outputs follow, so that what the
  // testbench then reads is exactly what the core samples at the next rising edge; waiting for the
  // following falling edge passes that rising edge, at which the handshakes seen ready took place.
  task automatic settle();
    #1;
  endtask

  task automatic next_cycle(inout longint unsigned n, input bit done, input string what);
    @(negedge clk);
    n++;
    if (!done && n > timeout_cycles) fail({"timeout ", what});
  endtask

  // --- AXI4-Lite -------------------------------------------------------------------------------------
  task automatic axil_write(input logic [14:0] addr, input logic [31:0] data);
    longint unsigned n = 0;
    bit aw_fire, w_fire, b_fire, aw_done = 1'b0, w_done = 1'b0, b_done = 1'b0;
    s_axil_awaddr = addr;
    s_axil_awvalid = 1'b1;
    s_axil_wdata = data;
    s_axil_wstrb = 4'hF;
    s_axil_wvalid = 1'b1;
    s_axil_bready = 1'b1;
    while (!b_done && !failed) begin
      settle();
      aw_fire = s_axil_awvalid && s_axil_awready;
      w_fire = s_axil_wvalid && s_axil_wready;
      b_fire = s_axil_bvalid && s_axil_bready;
      next_cycle(n, b_fire, $sformatf("%s write %h", !aw_done ? "awready" : !w_done ? "wready" : "bvalid", addr));
      if (aw_fire) begin
        aw_done = 1'b1;
        s_axil_awvalid = 1'b0;
      end
      if (w_fire) begin
        w_done = 1'b1;
        s_axil_wvalid = 1'b0;
      end
      if (b_fire) b_done = 1'b1;
    end
    s_axil_awvalid = 1'b0;
    s_axil_wvalid = 1'b0;
    s_axil_bready = 1'b0;
  endtask

  task automatic axil_read(input logic [14:0] addr, output logic [31:0] data);
    longint unsigned n = 0;
    bit ar_fire, r_fire, r_done = 1'b0;
    logic [31:0] rdata;
    data = '0;
    s_axil_araddr = addr;
    s_axil_arvalid = 1'b1;
    s_axil_rready = 1'b1;
    while (!r_done && !failed) begin
      settle();
      ar_fire = s_axil_arvalid && s_axil_arready;
      r_fire = s_axil_rvalid && s_axil_rready;
      rdata = s_axil_rdata;
      next_cycle(n, r_fire, $sformatf("%s read %h", s_axil_arvalid ? "arready" : "rvalid", addr));
      if (ar_fire) s_axil_arvalid = 1'b0;
      if (r_fire) begin
        data = rdata;
        r_done = 1'b1;
      end
    end
    s_axil_arvalid = 1'b0;
    s_axil_rready = 1'b0;
  endtask

  // --- AXI4-Stream -----------------------------------------------------------------------------------
  task automatic stream_send(input logic [31:0] words[$]);
    longint unsigned n;
    bit fire;
    for (int i = 0; i < words.size() && !failed; i++) begin
      s_axis_tdata = words[i];
      s_axis_tlast = (i == words.size() - 1);
      s_axis_tvalid = 1'b1;
      n = 0;
      do begin
        settle();
        fire = s_axis_tready;
        next_cycle(n, fire, $sformatf("s_axis_tready beat %0h of %0h", i, words.size()));
      end while (!fire && !failed);
    end
    s_axis_tvalid = 1'b0;
    s_axis_tlast = 1'b0;
  endtask

  task automatic stream_receive(input longint unsigned count);
    longint unsigned n;
    bit fire, last;
    logic [31:0] data;
    m_axis_tready = 1'b1;
    for (longint unsigned i = 0; i < count && !failed; i++) begin
      n = 0;
      do begin
        settle();
        fire = m_axis_tvalid;
        data = m_axis_tdata;
        last = m_axis_tlast;
        next_cycle(n, fire, $sformatf("m_axis_tvalid beat %0h of %0h", i, count));
      end while (!fire && !failed);
      if (fire) respond($sformatf("G %08h %0d", data, last));
    end
    m_axis_tready = 1'b0;
  endtask

  task automatic stream_exchange(input logic [31:0] words[$], input longint unsigned count);
    longint unsigned sent = 0, got = 0, idle = 0, quiet = 0;
    bit s_fire, m_fire;
    string state = "ok";
    logic [31:0] data[$];
    bit lasts[$];
    while ((sent < words.size() || got < count) && !failed) begin
      s_axis_tvalid = sent < words.size();
      s_axis_tdata = s_axis_tvalid ? words[sent] : '0;
      s_axis_tlast = s_axis_tvalid && sent == words.size() - 1;
      m_axis_tready = got < count;
      settle();
      s_fire = s_axis_tvalid && s_axis_tready;
      m_fire = m_axis_tready && m_axis_tvalid;
      if (m_fire) begin
        data.push_back(m_axis_tdata);
        lasts.push_back(m_axis_tlast);
      end
      quiet = (irq && !s_fire && !m_fire) ? quiet + 1 : 0;
      idle = (s_fire || m_fire) ? 0 : idle + 1;
      @(negedge clk);
      if (s_fire) sent++;
      if (m_fire) got++;
      if (quiet >= 16) begin
        state = "stopped";
        break;
      end
      if (idle > timeout_cycles) begin
        state = "stalled";
        break;
      end
    end
    s_axis_tvalid = 1'b0;
    s_axis_tlast = 1'b0;
    m_axis_tready = 1'b0;
    respond($sformatf("X %0h %0h %s", sent, got, state));
    foreach (data[i]) respond($sformatf("G %08h %0d", data[i], lasts[i]));
  endtask

  // --- commands --------------------------------------------------------------------------------------
  task automatic poll(input logic [14:0] addr, input logic [31:0] mask, input logic [31:0] value,
                      input longint unsigned max_cycles);
    longint unsigned t0 = cycles;
    logic [31:0] data;
    forever begin
      axil_read(addr, data);
      if (failed) return;
      if ((data & mask) == value) begin
        respond($sformatf("P ok %0h", cycles - t0));
        return;
      end
      if (cycles - t0 >= max_cycles) begin
        respond($sformatf("P timeout %0h", cycles - t0));
        return;
      end
    end
  endtask

  function automatic string strip(string s);
    int a = 0, b = s.len() - 1;
    while (a <= b && (s[a] == " " || s[a] == "\t")) a++;
    while (b >= a && (s[b] == "\n" || s[b] == "\r" || s[b] == " " || s[b] == "\t")) b--;
    return a > b ? "" : s.substr(a, b);
  endfunction

  // splits `line` at blanks into hexadecimal numbers; false if a token is not one
  function automatic bit parse_numbers(string line, output logic [63:0] nums[$]);
    int i = 0;
    nums = {};
    while (i < line.len()) begin
      int j;
      logic [63:0] v;
      string tok;
      while (i < line.len() && (line[i] == " " || line[i] == "\t")) i++;
      if (i >= line.len()) break;
      j = i;
      while (j < line.len() && line[j] != " " && line[j] != "\t") j++;
      tok = line.substr(i, j - 1);
      if (tok.len() > 2 && (tok.substr(0, 1) == "0x" || tok.substr(0, 1) == "0X")) tok = tok.substr(2, tok.len() - 1);
      foreach (tok[k]) begin
        if (!((tok[k] >= "0" && tok[k] <= "9") || (tok[k] >= "a" && tok[k] <= "f") || (tok[k] >= "A" && tok[k] <= "F")))
          return 1'b0;
      end
      if (tok.len() > 16) return 1'b0;
      if ($sscanf(tok, "%h", v) != 1) return 1'b0;
      nums.push_back(v);
      i = j;
    end
    return 1'b1;
  endfunction

  // the n data lines of an S or X command; false (and the run failed) if one is missing or malformed
  function automatic bit read_words(input logic [63:0] n, output logic [31:0] words[$]);
    string w;
    words = {};
    for (longint unsigned i = 0; i < n; i++) begin
      logic [63:0] v[$];
      if ($fgets(w, fin) == 0 || !parse_numbers(strip(w), v) || v.size() != 1) begin
        respond($sformatf("E bad command: data line %0h of %0h missing or malformed", i, n));
        failed = 1'b1;
        return 1'b0;
      end
      words.push_back(v[0][31:0]);
    end
    return 1'b1;
  endfunction

  task automatic execute(string line);
    byte cmd = line[0];
    logic [63:0] n[$];
    logic [31:0] data;
    logic [31:0] words[$];
    string bad;
    bad = {"bad command ", line};
    if (!parse_numbers(line.substr(1, line.len() - 1), n)) begin
      fail(bad);
      return;
    end
    case (cmd)
      "W": if (n.size() == 2) axil_write(n[0][14:0], n[1][31:0]); else fail(bad);
      "R": if (n.size() == 1) begin
        axil_read(n[0][14:0], data);
        if (!failed) respond($sformatf("R %08h", data));
      end else fail(bad);
      "S": if (n.size() == 1) begin
        if (!read_words(n[0], words)) return;
        stream_send(words);
      end else fail(bad);
      "G": if (n.size() == 1) stream_receive(n[0]); else fail(bad);
      "X": if (n.size() == 2) begin
        if (!read_words(n[0], words)) return;
        stream_exchange(words, n[1]);
      end else fail(bad);
      "P": if (n.size() == 4) poll(n[0][14:0], n[1][31:0], n[2][31:0], n[3]); else fail(bad);
      "C": if (n.size() == 0) respond($sformatf("C %0h", cycles)); else fail(bad);
      default: fail(bad);
    endcase
  endtask

  initial begin
    static string cmd_path = "/dev/stdin", out_path = "/dev/stdout";
    string line;
    void'($value$plusargs("cmd=%s", cmd_path));
    void'($value$plusargs("out=%s", out_path));
    void'($value$plusargs("timeout=%d", timeout_cycles));
    void'($value$plusargs("reset=%d", reset_cycles));
    fin = $fopen(cmd_path, "r");
    if (fin == 0) $fatal(1, "cannot open +cmd=%s", cmd_path);
    // /dev/stdout is the simulator's own stdout (IEEE 1800 STDOUT descriptor): another open file on it
    // would truncate, or be overwritten by Verilator's messages, when stdout is redirected to a file
    if (out_path == "/dev/stdout" || out_path == "-") fout = 32'h8000_0001;
    else fout = $fopen(out_path, out_path.substr(0, 4) == "/dev/" ? "a" : "w");
    if (fout == 0) $fatal(1, "cannot open +out=%s", out_path);

    repeat (reset_cycles) @(negedge clk);
    aresetn = 1'b1;  // `cycles` counts the rising edges from here on

    while (!failed) begin
      if ($fgets(line, fin) == 0) break;  // end of the command file
      line = strip(line);
      if (line.len() == 0 || line[0] == "#") continue;
      if (line == "Q") break;
      execute(line);
      $fflush(fout);
    end
    $fflush(fout);
    if (fout != 32'h8000_0001) $fclose(fout);
    $finish;
  end
endmodule
