# Clustered bar chart of one workload: one group of bars per target, one bar
# per (iodepth, connections) cell.  report.py calls it as
#   gnuplot -e "datafile='...'; outfile='...'; plottitle='...'; ylab='...'; ncols=N; refline=0|1" plot.gp
# The data file has a header row (target, then the cell names) and "?" for
# a missing value; refline=1 draws the y=1 line of the ratio plots.
set terminal pngcairo size 1280,640 noenhanced font "sans,10"
set output outfile
set title plottitle
set ylabel ylab
set datafile missing "?"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set xtics rotate by -30 nomirror
set grid ytics
set key outside right top
set yrange [0:*]
set bmargin 7
if (refline) {
  # Keep the parity line in view even when every bar is below it.
  set yrange [0:1.1<*]
  set arrow from graph 0, first 1 to graph 1, first 1 nohead lc rgb "red" dt 2 lw 1.5
}
plot for [i=2:ncols] datafile using i:xtic(1) title columnheader(i)
