// sram_dp.v -- synchronous simple dual-port SRAM (one write port, one read port).
// Read: an address presented (re = 1) during the cycle after edge e has its data on the output
// register rdata after edge e + 1; rdata holds when re = 0. Read-during-write to one address
// returns the old word.
`default_nettype none
module sram_dp #(
    parameter integer WIDTH = 8,
    parameter integer DEPTH = 16,
    parameter integer AW    = $clog2(DEPTH)
) (
    input  wire             clk,
    input  wire             we,
    input  wire [AW-1:0]    waddr,
    input  wire [WIDTH-1:0] wdata,
    input  wire             re,
    input  wire [AW-1:0]    raddr,
    output reg  [WIDTH-1:0] rdata
);
    reg [WIDTH-1:0] mem [0:DEPTH-1];
    always @(posedge clk) begin
        if (we) mem[waddr] <= wdata;
        if (re) rdata <= mem[raddr];
    end
endmodule
`default_nettype wire
